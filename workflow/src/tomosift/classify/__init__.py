"""Classifiers of subtomograms (paper Section 2.2 and Table 1).

``models``: the paper's Inception3D and DSRF3D (and tomosift's ResNet3D); ``inputs``: the
volumes a network sees (splits, Fourier binning, normalisation); ``devices``: CPU/GPU, threads
and precision; ``train``: training a CNN or the RIF-SVM; ``predict``: scores, features and
evaluation; ``rif``: rotation-invariant features and the RIF-SVM; ``modelfile``: the model file
format (tensors and a JSON header, loaded with ``torch.load(weights_only=True)``).
"""

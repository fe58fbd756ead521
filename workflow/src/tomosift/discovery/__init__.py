"""Discovery of structures, including ones absent from training (Xu et al. 2017, Sections 2.3, 3.3).

The pipeline, one module per step:

- :mod:`features`: structural feature vectors (CNN logits or hidden layer, RIF, pose-normalised
  voxels from :mod:`posenorm`);
- :mod:`cluster`: k-means over-partitioning and its agreement with the truth; :mod:`embed`:
  t-SNE maps of the features;
- :mod:`wedge`, :mod:`rotations`, :mod:`align`: missing-wedge masks, poses and their RELION Euler
  angles, and the constrained-correlation alignment over all of SO(3);
- :mod:`average`: wedge-weighted Fourier-space averaging; :mod:`classify3d`: reference-free
  classification by alternating alignment, assignment and averaging;
- :mod:`fsc`: Fourier shell correlation and resolution;
- :mod:`leave_one_out`: the paper's protocol for recovering a structure left out of training.
"""

"""Tomograms in, particles out: picking, extraction, import and RELION I/O.

- :mod:`pick`: template-free picking (Difference of Gaussians) and its scoring against a truth;
- :mod:`extract`: subtomograms cut out of a tomogram around picks;
- :mod:`imports`: existing subtomograms (RELION STAR files, MRC folders) into a dataset;
- :mod:`records`: the particle dataset those two write (its ``particles/`` group, the split);
- :mod:`joined`: several particle datasets as one (an HDF5 virtual dataset);
- :mod:`relion`: RELION 5 particle tables, read and written.
"""

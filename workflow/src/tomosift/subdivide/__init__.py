"""``tomosift subdivide``: CNN features and k-means clusters of datasets of any size, written
as RELION-ready subsets (see :mod:`tomosift.subdivide.run`)."""

from tomosift.subdivide.averages import cluster_averages
from tomosift.subdivide.run import (
    SubdivideResult,
    gather_and_cluster,
    subdivide,
    subdivide_tomogram,
)
from tomosift.subdivide.shards import check_model_matches, shard_features

__all__ = ["SubdivideResult", "check_model_matches", "cluster_averages", "gather_and_cluster",
           "shard_features", "subdivide", "subdivide_tomogram"]

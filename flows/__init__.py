"""Prefect flows over the fpn_geo library: `segment-scene` and `segment-scenes`, run on Dask workers.

The flows only put library calls in order; the library knows nothing of Prefect or Dask.
"""

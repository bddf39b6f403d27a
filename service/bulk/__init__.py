"""Bulk scoring: files of texts scored with a bundle, outside the service, at the speed of the hardware.

``tables`` reads and writes the formats, ``scorer`` turns inputs into the service's answers in
token-budget batches, ``parts`` makes the output resumable and atomic, ``progress`` shows how far
a run is, ``run`` ties them together and ``cli`` is ``python -m service.bulk``. ``ray_data``
offers the same scoring as a Ray Data ``map_batches`` class.
"""

"""Builds the compiled MetricBatch byte walk; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([Extension("pipeline._metricbatch", ["pipeline/_metricbatch.pyx"])]))

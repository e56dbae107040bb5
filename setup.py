"""Builds dmc._fastpath, the compiled data path, from dmc/_fastpath.pyx (and its .pxi parts)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("dmc._fastpath", ["dmc/_fastpath.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": 3},
        annotate=False,
    ),
)

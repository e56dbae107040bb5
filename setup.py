"""Builds dmc._fastpath, the compiled data path: dmc/_fastpath.pyx and its parts,
dmc/fastpath/*.pxi (code) and dmc/fastpath/*.pxd (declarations, included by dmc/_fastpath.pxd)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("dmc._fastpath", ["dmc/_fastpath.pyx"], extra_compile_args=["-O2"],
                   libraries=["ssl", "crypto"])],     # client TLS (dmc/fastpath/tls.pxi)
        compiler_directives={"language_level": 3},
        annotate=False,
    ),
)

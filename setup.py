"""Build configuration that pyproject.toml cannot express: the forwarding core's optional native
helper (conference/sfu/_fastpath.c). ``optional=True``: on a machine without a C compiler or
Python headers the build of it fails quietly, the package still installs, and the forwarding core
runs on its pure-Python path (README.md, "Native send")."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "conference.sfu._fastpath",
            sources=["conference/sfu/_fastpath.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)

"""Build configuration that pyproject.toml cannot express: the forwarding core's optional native
helpers (conference/sfu/_fastpath.c, the send side; conference/sfu/_fastrecv.c, the receive side).
``optional=True``: on a machine without a C compiler or Python headers their build fails quietly,
the package still installs, and the forwarding core runs on its pure-Python path (README.md,
"Native send")."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "conference.sfu._fastpath",
            sources=["conference/sfu/_fastpath.c"],
            depends=["conference/sfu/_native.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "conference.sfu._fastrecv",
            sources=["conference/sfu/_fastrecv.c"],
            depends=["conference/sfu/_native.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)

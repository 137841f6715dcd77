"""Code that runs inside Triton's Python backend.

``images`` and ``text`` are pure (numpy, PIL, tokenizers) and tested in-process; the
``*_model`` modules hold the ``TritonPythonModel`` classes that a built repository's
model.py files import.
"""

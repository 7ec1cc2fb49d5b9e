"""Test support, kept out of the library proper: tiny random-weight models of the real architectures
(:mod:`~freeret.testing.tiny`), the bundled-image smoke set (:mod:`~freeret.testing.smoke`), the generated MMEB
miniature (:mod:`~freeret.testing.mmeb_fixture`) and a plain chat-template renderer (:mod:`~freeret.testing.chat`).

The library imports these only where a config asks for them (``model.source=tiny``, ``dataset=smoke_mm``,
``dataset.source=fixture``: what ``mode=fast`` selects), and always lazily.
"""

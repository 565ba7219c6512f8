"""Content resolution: a FileEvent's bytes, verified, through the caches.

- :mod:`.base`: the reference an event carries (:class:`ContentRef`) and what
  resolving it gives (:class:`Resolved`);
- :mod:`.errors`: why content could not be had (transient or terminal);
- :mod:`.guard`: refusals of hostile references, before any I/O;
- :mod:`.cache`: the content cache (files named by their sha256, LRU-bounded);
- :mod:`.download`: presigned-URL downloads (timeouts, retries, a size cap);
- :mod:`.resolver`: :class:`ContentResolver`, the one way every consumer gets bytes.
"""

"""``jrag serve``'s HTTP service: the app (:mod:`jrag.server.app`), its cross-request batching
(:mod:`jrag.server.batching`) and its request and response bodies (:mod:`jrag.server.schemas`)."""

"""The runtime: loaded models and (later) batching, caching, the repository and the Runtime facade."""

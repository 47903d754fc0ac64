"""Corpora made into token shards: tokenizers that work offline, the on-disk format
(:mod:`.format`), the dataset index (:mod:`.index`), and the preparation that writes them.

Below the trainer (it reads shards) and above the spec; imports no torch."""

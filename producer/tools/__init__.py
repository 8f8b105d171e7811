"""Producer-side programs: the demo's submissions, the open-loop load generator and the synthetic
shape images that the example classifier is trained and checked on. None of them imports torch."""

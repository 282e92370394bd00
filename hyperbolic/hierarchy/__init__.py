"""The ontology as geometry: the AudioSet ontology, its match to a class list, and entailment cones."""

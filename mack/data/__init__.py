"""Loaders for the public file formats that MACK reads (COCO, Visual Genome, bottom-up TSV, SCAN precomp)."""

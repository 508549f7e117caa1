"""Turns opbench results into normalized comparisons and a static HTML report."""

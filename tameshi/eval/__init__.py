"""Probe workbench: bilingual (EN/JA) probe suites, automatic checks, runs saved as JSONL, reports.

suite.py (YAML → probes) → runner.py (batched generation + checks/) → records.py (JSONL) →
summary.py → report_md.py / report_html.py. judge.py is the optional LLM judge.
"""

"""Pipeline stages: each reads its inputs, calls library code, and writes its outputs, receipt and report data.

Nothing outside this package imports it (cli.py calls the stages lazily).
"""

"""The Medi-KUS benchmark suite: ingest, raw insert floor and read latency (``python -m bench``).

Transactions: https://hl7.org/fhir/R4/http.html#transaction — reads: https://hl7.org/fhir/R4/http.html#read
"""

//! Time-varying diagonal real scan (owned by the RG-LRU / S7 work; not written yet).

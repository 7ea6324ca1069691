//! Time-varying diagonal complex scan (owned by the S5 LTV work; not written yet).

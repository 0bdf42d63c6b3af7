//! Reports built from a matrix results directory (filled in by the reports work).

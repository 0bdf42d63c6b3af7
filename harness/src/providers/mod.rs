//! QEMU and firmware builds as named inputs (filled in by the providers work).

//! One live VM and what drives it: the supervisor (the only place QEMU is spawned), QMP, the
//! session (console + QMP + classifier), the serial shell, and the records a run leaves.

pub mod qmp;
pub mod record;
pub mod run;
pub mod runner;
pub mod session;
pub mod shell;
pub mod supervise;

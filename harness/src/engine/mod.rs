//! One live VM and what drives it: the supervisor (the only place QEMU is spawned), QMP, the
//! session (console + QMP + classifier), a gdbstub client (a hung guest's system registers),
//! the serial shell, the case engine that runs a machine through its steps, and the records a
//! case leaves.

pub mod case;
pub mod disk;
pub mod gdb;
pub mod guest;
pub mod limits;
pub mod login_state;
pub mod qmp;
pub mod record;
pub mod session;
pub mod shell;
pub mod step;
pub mod supervise;

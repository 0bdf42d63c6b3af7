pub mod catalog;
pub mod overlay;
pub mod seed;

pub mod cdn;
pub mod child;
pub mod hub;
pub mod noise;
pub mod pty;

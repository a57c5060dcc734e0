pub mod cdn;
pub mod child;
pub mod noise;

pub mod cdn;
pub mod noise;

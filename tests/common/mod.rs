pub mod cdn;

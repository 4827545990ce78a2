#![allow(dead_code)]
pub mod scenegen;

pub mod mobilesam;

//! placeholder while the store lands

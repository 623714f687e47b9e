//! Handles are indices plus a generation: a handle kept past a reset is an error, not a read of
//! reused memory; a handle from another graph is refused too.

use lmcore_core::{Error, Graph};

#[test]
fn stale_handle_is_an_error_after_reset() {
    let mut g = Graph::<f64>::new();
    let x = g.input(&[2, 3], &[1.0; 6]).unwrap();
    let y = g.gelu(x).unwrap();
    assert!(g.value(y).is_ok());
    g.reset();
    let _fresh = g.input(&[2, 3], &[2.0; 6]).unwrap(); // reuses the same slot and index
    assert!(matches!(g.value(y), Err(Error::StaleHandle { .. })));
    assert!(matches!(g.gelu(x), Err(Error::StaleHandle { .. })));
    let msg = g.value(x).unwrap_err().to_string();
    assert!(msg.contains("stale"), "{msg}");
}

#[test]
fn handle_from_another_graph_is_refused() {
    let mut a = Graph::<f64>::new();
    let mut b = Graph::<f64>::new();
    let x = a.input(&[2], &[1.0, 2.0]).unwrap();
    let _ = b.input(&[2], &[1.0, 2.0]).unwrap();
    assert!(matches!(b.value(x), Err(Error::ForeignHandle(_))));
}

#[test]
fn bad_shapes_and_ids_are_errors() {
    let mut g = Graph::<f32>::new();
    let x = g.input(&[2, 3], &[0.5; 6]).unwrap();
    let w = g.input(&[4, 5], &[0.5; 20]).unwrap();
    assert!(matches!(g.linear(x, w, None), Err(Error::Shape(_))));
    assert!(matches!(g.input(&[2, 2], &[1.0; 3]), Err(Error::Shape(_))));
    assert!(matches!(g.input_ids(&[2], [0i64, 9].into_iter(), 5), Err(Error::TokenOutOfRange { id: 9, limit: 5 })));
    assert!(matches!(g.input_ids(&[1], [-1i64].into_iter(), 5), Err(Error::TokenOutOfRange { id: -1, .. })));
    let qkv = g.input(&[1, 2, 6], &[0.1; 12]).unwrap();
    assert!(g.attention(qkv, 4).is_err());
    let s = g.input(&[1], &[1.0]).unwrap();
    assert!(g.add(s, x).is_err());
}

//! Every message that crosses an Umbra process boundary, and the transport that carries it:
//! a versioned envelope, length-delimited framing with a maximum frame size, and QUIC
//! endpoints with mutual TLS whose certificates carry a role. No business logic lives here.

package keystore

// NewCaddyStorage lets the external tests (which the conformance suite's
// import of this package forces) build a CaddyStorage over a storage of
// their own, as Provision does over Caddy's.
var NewCaddyStorage = newCaddyStorage

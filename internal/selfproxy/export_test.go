package selfproxy

// LocalIPs is localIPs, for the tests of package selfproxy_test, which
// load whole configs through the oauth2_upstream handler.
var LocalIPs = localIPs

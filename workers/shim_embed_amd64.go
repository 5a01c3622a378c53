package workers

import _ "embed"

// shim_amd64.bin is built from shimsrc/shim_amd64.S; the test
// TestEmbeddedShimIsUpToDate checks that it still is.
//
//go:generate sh shimsrc/build.sh shim_amd64.bin
//go:embed shim_amd64.bin
var shimAmd64 []byte

func init() { embeddedShimImage = shimAmd64 }

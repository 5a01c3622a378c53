package listener

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// maxFDName is the longest name systemd accepts in FDNAME= and
// LISTEN_FDNAMES (fdname_is_valid: 1-255 printable ASCII bytes, no ':').
const maxFDName = 255

// fdStorePrefixes start every name fdStoreName makes: "listener_" for a
// --bind, ROLE+"_" for a socket the master keeps for itself. A passed
// socket whose name starts with one of them is the master's own, kept in
// systemd's fd store, never one of a .socket unit. A new Addr.Role must be
// added here.
var fdStorePrefixes = []string{"listener_", "metrics_"}

// fdStoreName is the FDNAME under which the address's socket is kept in
// systemd's fd store: its Store key ("listener:"+Key, or Role+":"+Key)
// made a valid fd name, or "" for fd://N and systemd addresses, which are
// not kept there (systemd's own .socket unit keeps the latter).
//
// The mapping is one-to-one, so two binds never share a name: ':' becomes
// '_' (so "listener:127.0.0.1:8080" reads "listener_127.0.0.1_8080", as
// workers.FDName would write it), and '_', '%', '~' and every byte outside
// printable ASCII become %XX. A result longer than 255 bytes is cut to 238
// and ends in '~' and 16 hex digits of the SHA-256 of the key; '~' appears
// in no other name.
func (a Addr) fdStoreName() string {
	if a.Kind != KindTCP && a.Kind != KindUnix {
		return ""
	}
	return fdStoreName(a.storeKey())
}

func fdStoreName(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c == ':':
			b.WriteByte('_')
		case c == '_' || c == '%' || c == '~' || c < 0x21 || c > 0x7e:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	name := b.String()
	if len(name) <= maxFDName {
		return name
	}
	sum := sha256.Sum256([]byte(key))
	return name[:maxFDName-17] + "~" + hex.EncodeToString(sum[:8])
}

// fdStoreNamed reports whether a passed socket's name is one fdStoreName
// makes: the master's own socket, back from systemd's fd store.
func fdStoreNamed(name string) bool {
	for _, p := range fdStorePrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

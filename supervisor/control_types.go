package supervisor

import "time"

// Request is one control command (supervisor reload/status/scale/stop),
// as sent over the control socket (one JSON object per connection) and as
// handed to the master's loop.
type Request struct {
	Command string `json:"command"`           // a name in the commands table: "status", "reload", "scale", "stop", "upgrade"
	Wait    bool   `json:"wait,omitempty"`    // reload, upgrade: answer only once it ended
	Scale   string `json:"scale,omitempty"`   // scale: "N", "+N" or "-N"
	Fast    bool   `json:"fast,omitempty"`    // stop: like INT/QUIT instead of TERM
	Timeout string `json:"timeout,omitempty"` // reload --wait: how long the client waits; the server checks it parses, the client enforces it
}

// Response is the master's answer. OK false means the command failed (or,
// for reload --wait, the rollout was rolled back); Error says why in one line.
type Response struct {
	OK      bool    `json:"ok"`
	Error   string  `json:"error,omitempty"`
	Message string  `json:"message,omitempty"` // what happened, for people
	Status  *Status `json:"status,omitempty"`  // status only
}

// Status is the master and every worker, for `supervisor status`.
type Status struct {
	Pid        int          `json:"pid"`
	Phase      string       `json:"phase"`      // booting, running, draining, stopping
	Generation int          `json:"generation"` // the generation in force
	Target     int          `json:"target"`     // the generation being rolled out (= Generation when none)
	Workers    int          `json:"workers"`    // wanted
	Ready      int          `json:"ready"`      // workers ready now
	Started    time.Time    `json:"started"`
	LastReload string       `json:"last_reload,omitempty"` // outcome of the last reload
	Pool       []WorkerInfo `json:"pool"`
	// A master upgrade: what is under way ("" when none), the outcome of
	// the last one, and the other master as it last reported (its pool
	// without requests, memory or STATUS=).
	Upgrade     string  `json:"upgrade,omitempty"`
	LastUpgrade string  `json:"last_upgrade,omitempty"`
	Peer        *Status `json:"peer,omitempty"`
	// Steer is every steered bind's group (DESIGN §8), by bind.
	Steer []SteerGroup `json:"steer,omitempty"`
}

// SteerGroup is one steered bind's reuseport group: its sockets in the
// kernel's index order, the order the program's weights are written in.
type SteerGroup struct {
	Bind    string        `json:"bind"`
	Sockets []SteerSocket `json:"sockets"`
}

// SteerSocket is one socket of a steered group.
type SteerSocket struct {
	Inode      uint64 `json:"inode"`      // socket:[inode] in a worker's fds
	Generation int    `json:"generation"` // whose workers have it; 0: idle
	Weight     uint32 `json:"weight"`     // its share of new connections in the program attached last
	Queued     int    `json:"queued"`     // connections in its accept queue
	Paused     bool   `json:"paused,omitempty"`
}

// Call is a Request on its way to the loop; the loop answers on Reply
// (buffered, answered exactly once).
type Call struct {
	Request
	Reply chan Response
}

//go:build race

package relay_test

// raceEnabled: the race detector multiplies memory use and slows
// everything, the child relays of this test binary included.
const raceEnabled = true

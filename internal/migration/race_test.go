//go:build race

package migration

// raceEnabled: the model check runs a smaller bound under the race
// detector (it makes every step about five times slower).
const raceEnabled = true

package agent

import "fmt"

// The exit codes of the agent's launcher (images/agent/codebox_boot.py, and tini before
// it) when a worker's image cannot run the agent: codeboxd reads the exit of a worker that
// never answered as one of these, and says what the image lacks.
var bootFailures = map[uint32]string{
	3:   "its python3 is older than 3.9",
	4:   "IPython does not import with its python3",
	5:   "the agent's own modules do not load with its python3",
	126: "python3 on its PATH cannot be executed",
	127: "no python3 on its PATH",
}

// BootFailure says what an image lacks when the agent's launcher exited with code, and
// whether code is one of the launcher's.
func BootFailure(code uint32) (string, bool) {
	why, ok := bootFailures[code]
	return why, ok
}

// BootCheck is what the launcher's --check prints: what an image offers.
type BootCheck struct {
	Python    string   `json:"python"`
	IPython   string   `json:"ipython"`
	Languages []string `json:"languages"`
}

// String is the check as one log value.
func (b BootCheck) String() string {
	return fmt.Sprintf("python %s, IPython %s, %v", b.Python, b.IPython, b.Languages)
}

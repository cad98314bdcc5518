package daemon

import (
	"encoding/json"
	"fmt"

	"dsmigrate/internal/api"
)

// Message types, from the one table in internal/api.
const (
	tRequest   = api.TRequest
	tReply     = api.TReply
	tEvent     = api.TEvent
	tLogData   = api.TLogData
	tFail      = api.TFail
	tFile      = api.TFile
	tFilesDone = api.TFilesDone
	tPages     = api.TPages
	tPagesBack = api.TPagesBack
	tPagesEnd  = api.TPagesEnd
	tPagesDone = api.TPagesDone
)

type (
	Request      = api.Request
	Reply        = api.Reply
	ProcInfo     = api.ProcInfo
	Event        = api.Event
	MigrationRec = api.MigrationRec
)

// fileMsg announces one file of the image set; its content follows as a stream.
type fileMsg struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

func jsonUnmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("malformed message: %v", err)
	}
	return nil
}

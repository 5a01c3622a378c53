package workers

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	dispatchHelper()
	goleak.VerifyTestMain(m)
}

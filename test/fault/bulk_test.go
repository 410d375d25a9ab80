package fault

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Bulk data makes copies to node-b long enough to be killed inside. With
// two nodes, once in a volume's life a write is 24–40 MiB (at most half the
// volume) instead of a small file or block, in three pieces: three files in
// directories of their own (which xfs and ext4 place in different
// allocation groups), or three runs of blocks in the three thirds of a
// Block volume. A copy's data then spans its 64 MiB segments where the
// volume is bigger than one, so a transfer cut short has committed some.

// bulkShare is the percentage of writes that are bulk while a volume has
// none.
const bulkShare = 20

// writeBulk writes v's bulk data if it is its turn; it reports whether it
// wrote.
func (r *run) writeBulk(v *volume) bool {
	if r.peer == nil || r.on(v) != r.node || hasBulk(v) || r.opRng.IntN(100) >= bulkShare {
		return false
	}
	total := min(int64(24+r.opRng.IntN(17))*mib, v.size/2)
	piece := total / 3 / blockSize * blockSize
	seed := r.opRng.Uint64()
	if v.kind == "block" {
		third := v.size / 3 / blockSize
		if v.blocks == nil {
			v.blocks = map[int64]uint64{}
		}
		for i := range int64(3) {
			first := i*third + r.opRng.Int64N(third-piece/blockSize+1)
			buf := make([]byte, piece)
			for j := range piece / blockSize {
				s := seed + uint64(i<<32+j)
				fillPattern(rand.NewPCG(s, patternStream), buf[j*blockSize:(j+1)*blockSize])
				v.blocks[first+j] = s
			}
			if err := writeAt(v.target, first*blockSize, buf); err != nil {
				r.failf(v, "writing %d MiB to the published block device %s: %v", piece/mib, v.target, err)
				return true
			}
		}
		return true
	}
	for i := range 3 {
		dir := filepath.Join(v.target, fmt.Sprintf("bulk-%d", i))
		f := fileRecord{name: fmt.Sprintf("bulk-%d/data", i), seed: seed + uint64(i), size: int(piece)}
		if err := os.Mkdir(dir, 0o755); err != nil {
			r.failf(v, "writing to the published filesystem at %s: %v", v.target, err)
			return true
		}
		if err := writeFile(filepath.Join(v.target, f.name), pattern(f.seed, f.size)); err != nil {
			r.failf(v, "writing %d MiB to the published filesystem at %s: %v", piece/mib, v.target, err)
			return true
		}
		v.files = append(v.files, f)
	}
	return true
}

// hasBulk tells whether v holds bulk data (a restore or copy of a volume
// with bulk data does).
func hasBulk(v *volume) bool {
	for _, f := range v.files {
		if f.size > 0 {
			return true
		}
	}
	return len(v.blocks) >= 64
}

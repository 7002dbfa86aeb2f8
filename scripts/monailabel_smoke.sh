#!/usr/bin/env bash
# MONAI Label smoke test: this bundle in MONAI Label 0.8.5's `monaibundle` app, offline, on 127.0.0.1.
#
#   1. sets up MONAI Label in its own virtual environment (about 8 GB: torchvision brings a CUDA build of torch);
#   2. trains a demo-sized Vox2Vox (configs/demo.yaml sizes) on synthetic demo cases, in a copy of the bundle, so the
#      bundle's own models/ folder is never touched;
#   3. starts the server with that copy, calls /info/ and /infer/vox2vox on a study given as one file per modality
#      and on a study given as one 4-D NIfTI, and checks the label maps (BraTS 2021 values, input grid, tumour found);
#   4. starts a short training through the API and checks that it wrote a new models/model.pt;
#   5. stops the server by its PID.
#
# Usage: scripts/monailabel_smoke.sh [WORK_DIR]   (default .monailabel/; `make test-monailabel` runs it)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mkdir -p "${1:-$ROOT/.monailabel}" && cd "${1:-$ROOT/.monailabel}" && pwd)"
VENV="$WORK/venv"
PORT="${MONAILABEL_PORT:-8765}"
URL="http://127.0.0.1:$PORT"
BUNDLE_PY="$ROOT/.venv/bin/python"  # the bundle's own environment (make setup), for demo data and training
MODEL=vox2vox
SERVER_PID=""

say() { printf '\n[monailabel-smoke] %s\n' "$*"; }
fail() { printf '[monailabel-smoke] FAILED: %s\n' "$*" >&2; exit 1; }
stop_server() {  # the server leads a process group of its own: its inference and training workers end with it
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    say "stopping the server (PID $SERVER_PID) and its workers"
    kill -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
    kill -9 -- "-$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_server EXIT

[ -x "$BUNDLE_PY" ] || fail "$BUNDLE_PY not found: run 'make setup' first"

# ---- 1. MONAI Label in its own environment (pins from REFERENCE: monailabel 0.8.5 with monai 1.6.1) --------------
if [ ! -x "$VENV/bin/monailabel" ]; then
  say "installing MONAI Label 0.8.5 into $VENV (about 8 GB, several minutes)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -qq --upgrade pip
  "$VENV/bin/python" -m pip install -qq torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/python" -m pip install -qq monailabel==0.8.5 monai==1.6.1 "pydicom<3" "pynetdicom<3" \
    dicomweb-client==0.59.1 nibabel==5.4.2 pytorch-ignite==0.5.5 itk==5.4.7 pyyaml fire nilearn==0.14.1 scipy tensorboard
fi

# ---- 2. demo data, studies for the datastore, and a demo-sized bundle copy with a trained model ------------------
say "making demo data and the MONAI Label datastore"
rm -rf "$WORK/data" "$WORK/studies" "$WORK/apps"
"$BUNDLE_PY" "$ROOT/scripts/make_demo_data.py" --output-dir "$WORK/data" --num-cases 8 --seed 4 --spacing 2 --quiet
"$BUNDLE_PY" - "$WORK" <<'EOF'
import shutil, sys
from pathlib import Path
import nibabel as nib
import numpy as np

work = Path(sys.argv[1])
data, studies = work / "data", work / "studies"
(studies / "labels" / "final").mkdir(parents=True)
cases = sorted(p.name for p in data.iterdir())
# DEMO_00000: one file per modality, as an annotator loads them into 3D Slicer (no label: to be segmented)
for modality in ("t1", "t1ce", "t2", "flair"):
    shutil.copy(data / cases[0] / f"{cases[0]}_{modality}.nii.gz", studies)
# the others: one 4-D NIfTI per study (channels T1, T1ce, T2, FLAIR); all but DEMO_00001 labelled, for training
for case in cases[1:]:
    images = [nib.load(data / case / f"{case}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
    stacked = np.stack([np.asarray(i.dataobj) for i in images], axis=-1)
    nib.save(nib.Nifti1Image(stacked, images[0].affine, images[0].header), studies / f"{case}.nii.gz")
    if case != cases[1]:
        shutil.copy(data / case / f"{case}_seg.nii.gz", studies / "labels" / "final" / f"{case}.nii.gz")
EOF

say "making the app and a demo-sized copy of the bundle"
mkdir -p "$WORK/apps"
cp -r "$VENV/monailabel/sample-apps/monaibundle" "$WORK/apps/"
COPY="$WORK/apps/monaibundle/model/$MODEL"
mkdir -p "$COPY/models"
cp -r "$ROOT/configs" "$ROOT/bundle" "$ROOT/LICENSE" "$COPY/"
cp -r "$ROOT/docs" "$COPY/" 2>/dev/null || true
# the copy's configs carry the demo's sizes: MONAI Label reads configs/*.yaml as they are, with no overrides
"$BUNDLE_PY" - "$COPY/configs" <<'EOF'
import sys
from pathlib import Path
import yaml

configs = Path(sys.argv[1])
demo = yaml.safe_load((configs / "demo.yaml").read_text())
keep = ("features", "discriminator_channels", "patch_size", "target_spacing", "batch_size", "num_workers",
        "sw_batch_size", "learning_rate", "val_interval")
for name in ("train.yaml", "inference.yaml"):
    config = yaml.safe_load((configs / name).read_text())
    config.update({k: demo[k] for k in keep if k in demo and (k in config or name == "train.yaml")})
    config["device"] = "$torch.device('cpu')"
    (configs / name).write_text(yaml.safe_dump(config, sort_keys=False))
EOF
say "training the demo-sized model for the copy (20 epochs on the CPU)"
(cd "$ROOT" && "$BUNDLE_PY" -m monai.bundle run training --meta_file "$COPY/configs/metadata.json" \
  --config_file "$COPY/configs/train.yaml" --logging_file "$COPY/configs/logging.conf" --bundle_root "$COPY" \
  --dataset_dir "$WORK/data" --num_folds 4 --max_epochs 20 --val_interval 10 --quiet true > "$WORK/train.log" 2>&1) \
  || { tail -30 "$WORK/train.log"; fail "training the demo-sized model"; }
rm -f "$COPY"/models/checkpoint_epoch=*.pt
[ -f "$COPY/models/model.pt" ] || fail "no models/model.pt after training"

# ---- 3. the server, /info/ and /infer ---------------------------------------------------------------------------
say "starting MONAI Label on $URL"
# the monailabel launcher execs `python -m monailabel.main` with the python found on PATH; in a new session, so that
# the server's PID is also its process group's and stop_server ends the workers it starts with it
PATH="$VENV/bin:$PATH" setsid "$VENV/bin/monailabel" start_server --app "$WORK/apps/monaibundle" \
  --studies "$WORK/studies" --conf models "$MODEL" --conf zoo_source github --conf sam2 false --conf preload false \
  --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 180); do
  curl -sf "$URL/info/" -o "$WORK/info.json" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -40 "$WORK/server.log"; fail "the server exited"; }
  sleep 2
done
[ -s "$WORK/info.json" ] || { tail -40 "$WORK/server.log"; fail "no answer from $URL/info/ in 6 minutes"; }
"$BUNDLE_PY" -c "
import json, sys
info = json.load(open('$WORK/info.json'))
labels = info['models']['$MODEL']['labels']
print('models:', list(info['models']), 'labels:', labels)
assert labels == {'necrotic tumour core': 1, 'peritumoural oedema': 2, 'enhancing tumour': 4}, labels  # values written
" || fail "/info/ does not list $MODEL with its labels"

infer() {  # infer STUDY_ID OUTPUT
  curl -sf -X POST "$URL/infer/$MODEL?image=$1&output=image" -o "$2" \
    || { tail -40 "$WORK/server.log"; fail "/infer/$MODEL on $1"; }
}
say "inferring a study given as one file per modality (DEMO_00000_flair and its siblings)"
infer DEMO_00000_flair "$WORK/pred_per_modality.nii.gz"
say "inferring a study given as one 4-D NIfTI (DEMO_00001)"
infer DEMO_00001 "$WORK/pred_4d.nii.gz"
"$BUNDLE_PY" - "$WORK" <<'EOF' || fail "the label maps returned by /infer"
import sys
from pathlib import Path
import nibabel as nib
import numpy as np

work = Path(sys.argv[1])
for pred_name, case in (("pred_per_modality.nii.gz", "DEMO_00000"), ("pred_4d.nii.gz", "DEMO_00001")):
    pred, ref = nib.load(work / pred_name), nib.load(work / "data" / case / f"{case}_seg.nii.gz")
    labels = np.asarray(pred.dataobj).squeeze()
    values = set(np.unique(labels).tolist())
    assert values <= {0, 1, 2, 4}, f"{pred_name}: label values {values} are not BraTS 2021's"
    assert labels.shape == ref.shape, f"{pred_name}: shape {labels.shape}, input {ref.shape}"
    whole, truth = labels > 0, np.asarray(ref.dataobj) > 0
    dice = 2 * (whole & truth).sum() / max(whole.sum() + truth.sum(), 1)
    print(f"{pred_name}: labels {sorted(values)}, whole-tumour Dice {dice:.3f} against the reference")
    assert dice > 0.5, f"{pred_name}: whole-tumour Dice {dice:.3f}: the study was not read right"
EOF

# ---- 4. training through the API --------------------------------------------------------------------------------
say "starting a 2-epoch training through the API"
before=$(stat -c %Y "$COPY/models/model.pt")
sleep 1
curl -sf -X POST "$URL/train/$MODEL" -H "Content-Type: application/json" \
  -d '{"max_epochs": 2, "val_split": 0.34, "device": "cpu", "multi_gpu": false, "pretrained": true, "tracking": "None"}' \
  > /dev/null || { tail -40 "$WORK/server.log"; fail "POST /train/$MODEL"; }
status=""
for i in $(seq 300); do
  status=$(curl -sf "$URL/train/?check_if_running=false" | "$BUNDLE_PY" -c "import json,sys; d=json.load(sys.stdin); print(d.get('status', '') if isinstance(d, dict) else '')" || true)
  case "$status" in DONE|ERROR|FAILED|STOPPED) break ;; esac
  sleep 2
done
[ "$status" = "DONE" ] || { tail -60 "$WORK/server.log"; fail "training through the API ended with status '$status'"; }
after=$(stat -c %Y "$COPY/models/model.pt")
[ "$after" -gt "$before" ] || fail "training through the API did not write models/model.pt"

say "passed: /info/, /infer on per-modality and 4-D studies, training through the API"

#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: Workflow
id: cryoflow_screening
label: "cryoflow grid screening"
doc: |
  The fast path for grid screening: is this grid worth a full collection? CTF estimation
  with quality metrics, bad-micrograph detection with reasons, and particle picking on the
  good micrographs (picks per micrograph, the particle size found). No extraction: screening
  needs the counts and the reports, not the stacks. A quick 2D classification and the
  feedback step (scores back to the acquisition program) are not part of it yet, because those
  steps do not exist yet; they join here as they land (issue 7). Every step writes its folder
  (report.html, summary.json) into the output directory; `cryoflow report` indexes them.
$namespaces:
  sbg: https://www.sevenbridges.com/
inputs:
  micrographs:
    type: Directory
    label: Micrographs
    doc: Folder of motion-corrected micrographs (MRC), searched recursively (EPU layout understood).
    sbg:x: 0
    sbg:y: 0
  pixel_size:
    type: float?
    label: Pixel size (Å)
    doc: Pixel size in Å; default from the MRC headers.
    sbg:x: 0
    sbg:y: 150
  voltage:
    type: float
    default: 300.0
    label: Voltage (kV)
    sbg:x: 0
    sbg:y: 300
  cs:
    type: float
    default: 2.7
    label: Cs (mm)
    sbg:x: 0
    sbg:y: 450
  amplitude_contrast:
    type: float
    default: 0.1
    label: Amplitude contrast
    sbg:x: 0
    sbg:y: 600
  diameter:
    type: float?
    label: Particle diameter (Å)
    doc: Particle diameter in Å when known (skips the diameter search); default, searched from the data.
    sbg:x: 600
    sbg:y: 500
steps:
  ctf:
    run: ../tools/ctf.cwl
    label: CTF
    in:
      micrographs: micrographs
      pixel_size: pixel_size
      voltage: voltage
      cs: cs
      amplitude_contrast: amplitude_contrast
    out: [out_dir, micrographs_ctf, summary]
    sbg:x: 300
    sbg:y: 300
  micassess:
    run: ../tools/micassess.cwl
    label: Bad-micrograph detection
    in:
      ctf_dir: ctf/out_dir
      micrographs: micrographs
    out: [out_dir, micrographs_good, micrographs_rejected, summary]
    sbg:x: 600
    sbg:y: 300
  pick:
    run: ../tools/pick.cwl
    label: Picking
    in:
      micrographs: micassess/micrographs_good
      images: micrographs
      diameter: diameter
    out: [out_dir, coordinates, report, summary]
    sbg:x: 900
    sbg:y: 300
outputs:
  ctf_dir:
    type: Directory
    label: CTF results
    outputSource: ctf/out_dir
    sbg:x: 600
    sbg:y: 100
  micassess_dir:
    type: Directory
    label: Micrograph assessment
    outputSource: micassess/out_dir
    sbg:x: 900
    sbg:y: 100
  pick_dir:
    type: Directory
    label: Picks
    outputSource: pick/out_dir
    sbg:x: 1200
    sbg:y: 200
  coordinates:
    type: File
    label: Coordinates (STAR)
    outputSource: pick/coordinates
    sbg:x: 1200
    sbg:y: 400

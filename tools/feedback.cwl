#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_feedback
label: "cryoflow feedback: scores back to acquisition"
doc: |
  Turns a run's scores into acquisition decisions: places every micrograph on the grid (EPU or
  Leginon file names, EPU metadata beside the images, SerialEM .mdoc files and navigator, or a
  CSV), aggregates the scores per hole and square, predicts the holes not imaged yet and plans
  the rest of the session under a time budget. The step folders it reads (ctf, micassess,
  pick, particles; any may be left out, but micassess or ctf is needed) are staged under those
  names beside the micrograph folder, so the working directory is a run folder as
  `cryoflow feedback --run` expects (the micrograph names in the STAR files resolve there; a
  simulated dataset's truth stands in for EPU's stage positions). Writes feedback.json (schema
  cryoflow.feedback/1), squares.csv, holes.csv, plan.csv, a flagged copy of the navigator when
  one is given, summary.json and report.html.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
requirements:
  InitialWorkDirRequirement:
    listing:
      - $(inputs.micrographs)
      - {entryname: ctf, entry: $(inputs.ctf_dir)}
      - {entryname: micassess, entry: $(inputs.micassess_dir)}
      - {entryname: pick, entry: $(inputs.pick_dir)}
      - {entryname: particles, entry: $(inputs.particles_dir)}
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 1
    ramMin: 2048
baseCommand: [cryoflow, feedback]
arguments:
  - {prefix: --run, valueFrom: $(runtime.outdir)}
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  micrographs:
    type: Directory
    label: Micrographs
    doc: The folder of micrographs given to the CTF step (staged under its own name; EPU metadata beside the images gives stage positions, a simulated dataset's truth stands in for them).
  ctf_dir:
    type: Directory?
    label: CTF step folder
    doc: Output folder of cryoflow ctf (micrographs_ctf.star); the quality score when there is no micassess folder.
  micassess_dir:
    type: Directory?
    label: Micassess step folder
    doc: Output folder of cryoflow micassess (micrographs_good.star, micrographs_rejected.star); P(good) per micrograph.
  pick_dir:
    type: Directory?
    label: Pick step folder
    doc: Output folder of cryoflow pick (summary.json with the picks per micrograph).
  particles_dir:
    type: Directory?
    label: Clean stack folder
    doc: Output folder of cryoflow particles score (micrographs_yield.star, good particles per micrograph).
  locations:
    type: File?
    label: Micrograph locations (CSV)
    doc: "CSV with columns micrograph, grid, square, hole, x_um, y_um (any of the last five): where each micrograph was taken."
    inputBinding: {prefix: --locations}
  mdoc:
    type: Directory?
    label: SerialEM .mdoc folder
    doc: Folder searched for SerialEM .mdoc files (stage positions and navigator labels of the exposures).
    inputBinding: {prefix: --mdoc}
  nav:
    type: File?
    label: SerialEM navigator
    doc: SerialEM navigator (.nav, text format); its points are the targets and a flagged copy is written.
    inputBinding: {prefix: --nav}
  targets:
    type: File?
    label: Targets (CSV)
    doc: "CSV of the holes that may be acquired: square, hole, x_um, y_um, optional grid."
    inputBinding: {prefix: --targets}
  budget:
    type: float
    default: 2.0
    label: Time budget (h)
    doc: Microscope time left for the session, hours.
    inputBinding: {prefix: --budget}
  exposure:
    type: float
    default: 10.0
    label: Seconds per exposure
    doc: Seconds per exposure including the move to the hole.
    inputBinding: {prefix: --exposure}
  square_move:
    type: float
    default: 60.0
    label: Seconds per square move
    doc: Seconds to move to another grid square.
    inputBinding: {prefix: --square-move}
  min_quality:
    type: float
    default: 0.0
    label: Minimum predicted quality
    doc: Never plan holes predicted below this P(good) (0-1).
    inputBinding: {prefix: --min-quality}
  out_name:
    type: string
    default: feedback
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Feedback step folder
    doc: feedback.json, squares.csv, holes.csv, plan.csv, the flagged navigator (with nav), report.html, figures/, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  feedback:
    type: File
    label: Feedback (JSON)
    doc: feedback.json, schema cryoflow.feedback/1, per square continue/skip and why, predicted quality of unimaged holes, the acquisition plan.
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/feedback.json}
  plan:
    type: File
    label: Acquisition plan (CSV)
    doc: plan.csv, the holes to acquire in order with their predicted quality and the time they take.
    outputBinding: {glob: $(inputs.out_name)/plan.csv}
  report:
    type: File
    label: Report
    doc: report.html, the grid map with the decisions, the plan and the evidence behind it.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures (squares to continue and skip, exposures planned, expected good).
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}

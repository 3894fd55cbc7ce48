#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_pick
label: "cryoflow pick: particle picking with parameters chosen from the data"
doc: |
  Picks particles on every micrograph of a micrographs STAR with CTF columns (micassess's
  micrographs_good.star or the CTF step's micrographs_ctf.star): a CTF-aware centre-surround
  filter at the particle's size, scores in standard deviations of the noise, the diameter
  searched and the threshold chosen against a noise null unless given, contamination, carbon
  and thick ice excluded; by default (picker auto/cnn) the candidates are then re-scored by a
  small CNN trained positive-unlabelled on the fly on the dataset's confident picks. Writes RELION AutoPick coordinate files
  (coordinates/<micrograph>_autopick.star), coordinates.star indexing them (paths relative to
  the output folder, so pass the whole folder to extract), summary.json (every chosen
  parameter with its evidence, and `fixed`: every decision taken over the set at full precision),
  picker_state.pt (the CNN's weights, a self-template) and report.html. Given `parameters` (an
  earlier pick folder: the workflows' parameter search on a sample of the set), nothing is
  decided over the micrographs given: each is picked with that folder's decisions, so a batch
  picks exactly as one job over all micrographs would (the workflows scatter picking over
  batches this way; `cryoflow merge` joins the batches' folders).
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 4096
baseCommand: [cryoflow, pick]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  micrographs:
    type: File
    label: Micrographs (STAR)
    doc: RELION 3.1+ micrographs STAR with CTF columns (micrographs_good.star of micassess, or micrographs_ctf.star).
    inputBinding: {prefix: --micrographs}
  images:
    type: Directory
    label: Micrograph folder
    doc: The folder of micrographs the STAR file names (given to the CTF step); the images are looked up in it.
    inputBinding: {prefix: --images}
  diameter:
    type: float?
    label: Particle diameter (Å)
    doc: Particle diameter in Å; default, searched from the data (the response of the filter over a range of sizes).
    inputBinding: {prefix: --diameter}
  threshold:
    type: float?
    label: Score threshold (σ)
    doc: Score threshold in standard deviations of the noise; default, chosen from the data against a noise null.
    inputBinding: {prefix: --threshold}
  templates:
    type: File?
    label: Templates (class averages)
    doc: A .mrcs stack of 2D class averages to pick by template matching (rotated, CTF-matched) instead of the blob filter.
    inputBinding: {prefix: --templates}
  template_classes:
    type: string?
    label: Template classes
    doc: Comma-separated 1-based classes of the templates stack to use (e.g. 1,4,7); default, all.
    inputBinding: {prefix: --template-classes}
  picker:
    type:
      type: enum
      symbols: [auto, blob, cnn]
    default: auto
    label: Picker
    doc: "blob: the filter's (or templates') picks; cnn: those candidates re-scored by a small CNN trained positive-unlabelled on the fly on this dataset's confident picks (or on train_coordinates); auto (default): the one measured best, cnn."
    inputBinding: {prefix: --picker}
  train_coordinates:
    type: File?
    label: Training particles (STAR)
    doc: A particles STAR (e.g. classassess's particles_selected.star, the particles of good 2D classes) whose particles are the CNN picker's positives instead of the confident picks.
    inputBinding: {prefix: --train-coordinates}
  parameters:
    type: Directory?
    label: Parameters (pick folder)
    doc: "An earlier pick folder (a parameter search): pick with its diameter, threshold, CNN and junk-test limits (summary.json 'fixed', picker_state.pt) instead of deciding over these micrographs; then give no diameter or threshold, and templates only as that run had them."
    inputBinding: {prefix: --parameters}
  seed:
    type: int?
    label: Seed
    doc: Seed of the CNN picker's training (default 0); the same input and seed give the same picks.
    inputBinding: {prefix: --seed}
  no_report:
    type: boolean
    default: false
    label: Skip the report
    doc: Skip report.html and its figures (summary.json is still written).
    inputBinding: {prefix: --no-report}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: pick
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Pick step folder
    doc: coordinates.star, coordinates/*_autopick.star, report.html, figures/, summary.json; the input of extract.
    outputBinding: {glob: $(inputs.out_name)}
  coordinates:
    type: File
    label: Coordinate index (STAR)
    doc: coordinates.star, block coordinate_files (rlnMicrographName, rlnMicrographCoordinates); the files it names lie in out_dir, relative to it.
    outputBinding: {glob: $(inputs.out_name)/coordinates.star}
  report:
    type: File?
    label: Report
    doc: report.html, the chosen parameters and why, picks drawn on micrographs (absent with no_report).
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures and every chosen parameter.
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}

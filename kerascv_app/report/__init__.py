"""``kcv report``: one self-contained HTML page that shows what a model learned and where it fails.

    sources.py    opens a finished run or ensemble directory and reads its records
    analysis.py   the numbers: classification report, confused pairs, top losses, calibration
    figures.py    matplotlib figures and image thumbnails, inlined as base64 PNG
    images.py     test and training images read through the run's own data source and splits
    gradcam.py    Grad-CAM heat maps, computed under TensorFlow from model.keras
    page.py       the page's context, the Jinja2 template, written aside and renamed

``kcv fit`` and ``kcv ensemble`` write the parts that need no images (:func:`write_report_quietly`);
``kcv report`` adds top losses, Grad-CAM and the augmentation preview, or compares directories.
"""

from kerascv_app.report.page import write_report, write_report_quietly

__all__ = ["write_report", "write_report_quietly"]
